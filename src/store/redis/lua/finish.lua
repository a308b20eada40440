-- Stores the outcome of the claim with token ARGV[1] on KEYS[1]: status
-- ARGV[3], kept ARGV[2] ms from now, when Redis deletes it and its journal
-- KEYS[2]. ARGV[4] is '1' when the journal stays, '0' when it is dropped
-- (the server refused the output): what it held is then flagged as cut.
-- The rest of ARGV are field/value pairs. An end entry in the journal wakes
-- its followers. Returns 1, or 0 when the claim is no longer ours. A
-- record with our token that is already finished was finished by an
-- earlier try of this same call whose reply was lost.
local seen = redis.call('HMGET', KEYS[1], 'token', 'status', 'stdout_bytes', 'stderr_bytes')
if seen[1] ~= ARGV[1] then return 0 end
if seen[2] ~= 'in_progress' then return 1 end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local expires_at = string.format('%d', now + tonumber(ARGV[2]))
redis.call('HDEL', KEYS[1], 'lease_until')
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'finished_at', string.format('%d', now),
  'expires_at', expires_at, unpack(ARGV, 5))
if ARGV[4] == '0' then
  redis.call('DEL', KEYS[2])
  for i, stream in ipairs({'stdout', 'stderr'}) do
    if tonumber(seen[2 + i] or '0') > 0 then
      redis.call('HSET', KEYS[1], stream .. '_bytes', '0', stream .. '_truncated', '1')
    end
  end
end
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
local n = last and tonumber(string.match(last[1], '^(%d+)')) or 0
redis.call('XADD', KEYS[2], string.format('%d-0', n + 1), 'end', '1')
redis.call('HINCRBY', KEYS[1], 'rev', 1)
redis.call('PEXPIREAT', KEYS[1], expires_at)
redis.call('PEXPIREAT', KEYS[2], expires_at)
return 1
