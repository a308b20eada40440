-- Deletes each record KEYS[i] that is still as purge judged it, with its
-- journal KEYS[n + i]: ARGV holds (token, status, lease_until) for each,
-- lease_until empty when there was none. A run that finished, renewed its
-- lease or was claimed again since the look stays. Returns how many went.
local gone = 0
local n = #ARGV / 3
for i = 1, n do
  local seen = redis.call('HMGET', KEYS[i], 'token', 'status', 'lease_until')
  if seen[1] == ARGV[3 * i - 2] and seen[2] == ARGV[3 * i - 1]
      and (seen[3] or '') == ARGV[3 * i] then
    gone = gone + redis.call('DEL', KEYS[i])
    redis.call('DEL', KEYS[n + i])
  end
end
return gone
