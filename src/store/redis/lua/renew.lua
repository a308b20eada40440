-- Extends the lease of the running claim with token ARGV[1] on KEYS[1] to
-- ARGV[2] ms from now. The record and its journal KEYS[2] have no expiry
-- while in progress (one written by an older idem had: it goes).
-- Returns 1, or 0 when the claim is no longer ours.
local seen = redis.call('HMGET', KEYS[1], 'token', 'status')
if seen[1] ~= ARGV[1] or seen[2] ~= 'in_progress' then return 0 end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local lease_until = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'lease_until', string.format('%d', lease_until))
redis.call('HINCRBY', KEYS[1], 'rev', 1)
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[2])
return 1
