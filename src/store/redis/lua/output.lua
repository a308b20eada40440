-- Returns field ARGV[2] (a stream's stored output) of KEYS[1] if the record
-- still carries token ARGV[1], else nil.
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return false end
return redis.call('HGET', KEYS[1], ARGV[2]) or ''
