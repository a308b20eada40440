-- Records the child of the running claim with token ARGV[1] on KEYS[1]; the
-- rest of ARGV are field/value pairs. Returns 1, or 0 when no longer ours.
local seen = redis.call('HMGET', KEYS[1], 'token', 'status')
if seen[1] ~= ARGV[1] or seen[2] ~= 'in_progress' then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('HINCRBY', KEYS[1], 'rev', 1)
return 1
