-- Counts one replay of KEYS[1] if it still carries token ARGV[1].
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then
  redis.call('HINCRBY', KEYS[1], 'replays', 1)
end
return 0
