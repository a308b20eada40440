-- Deletes each record KEYS[i] (i <= #ARGV) that still carries token
-- ARGV[i], with its journal KEYS[#ARGV + i]; returns how many went.
local gone = 0
local n = #ARGV
for i = 1, n do
  if redis.call('HGET', KEYS[i], 'token') == ARGV[i] then
    gone = gone + redis.call('DEL', KEYS[i])
    redis.call('DEL', KEYS[n + i])
  end
end
return gone
