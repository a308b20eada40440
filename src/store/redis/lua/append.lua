-- Appends frame ARGV[4] to the journal KEYS[2] of the running claim with
-- token ARGV[1] on KEYS[1], as entry N-0 where N is ARGV[5] + 1 (the
-- frame's number, from 0, plus one), and adds ARGV[2] and ARGV[3] to its
-- stdout and stderr byte counts. A frame whose entry is there already (an
-- earlier try whose reply was lost) is not written or counted again. The
-- journal expires with the record. Returns 1, or 0 when the claim is no
-- longer ours.
local seen = redis.call('HMGET', KEYS[1], 'token', 'status')
if seen[1] ~= ARGV[1] or seen[2] ~= 'in_progress' then return 0 end
local n = tonumber(ARGV[5]) + 1
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
if last and tonumber(string.match(last[1], '^(%d+)')) >= n then return 1 end
redis.call('HINCRBY', KEYS[1], 'stdout_bytes', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'stderr_bytes', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'rev', 1)
if #ARGV[4] > 0 then
  redis.call('XADD', KEYS[2], string.format('%d-0', n), 'f', ARGV[4])
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
end
return 1
