-- Deletes each record KEYS[i] that still carries token ARGV[i]; returns how
-- many went.
local gone = 0
for i, key in ipairs(KEYS) do
  if redis.call('HGET', key, 'token') == ARGV[i] then
    gone = gone + redis.call('DEL', key)
  end
end
return gone
