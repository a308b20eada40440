-- Stores the outcome of the claim with token ARGV[1] on KEYS[1]: status
-- ARGV[3], kept ARGV[2] ms from now, when Redis deletes it; the rest of ARGV
-- are field/value pairs (output included). Returns 1, or 0 when the claim is
-- no longer ours. A record with our token that is already finished was
-- finished by an earlier try of this same call whose reply was lost.
local seen = redis.call('HMGET', KEYS[1], 'token', 'status')
if seen[1] ~= ARGV[1] then return 0 end
if seen[2] ~= 'in_progress' then return 1 end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local expires_at = now + tonumber(ARGV[2])
redis.call('HDEL', KEYS[1], 'lease_until')
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'finished_at', string.format('%d', now),
  'expires_at', string.format('%d', expires_at), unpack(ARGV, 4))
redis.call('HINCRBY', KEYS[1], 'rev', 1)
redis.call('PEXPIREAT', KEYS[1], string.format('%d', expires_at))
return 1
