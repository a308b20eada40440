-- Writes a new claim on KEYS[1] if the record is still the one the caller
-- decided on: absent when ARGV[1] is '0', else carrying token ARGV[1] at
-- revision ARGV[2]. KEYS[2] is the record's journal (a new claim starts a
-- new one). ARGV[3] is the lease (ms); the rest are the claim's field/value
-- pairs (among them the caller's `claim_nonce`, by which it recognises its
-- own claim when the answer was lost). Returns the new fencing token, or 0
-- when the record is not as seen. A record in progress never expires in
-- Redis: a crashed one stays until a call takes it over or an operator
-- purges it.
--
-- Tokens only grow per key. Cluster layout (KEYS[1] and KEYS[2] share a
-- hash slot): the token is the larger of the record's last token + 1 and
-- the server's clock in microseconds, so a key whose record expired or was
-- purged still gets a larger token than before (unless the server's clock
-- went back). The schema 1 layout passes its global counter as KEYS[3].
local seen = redis.call('HMGET', KEYS[1], 'token', 'rev')
if ARGV[1] == '0' then
  if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
elseif seen[1] ~= ARGV[1] or (seen[2] or '') ~= ARGV[2] then
  return 0
end
local time = redis.call('TIME')
local clock_us = tonumber(time[1]) * 1000000 + tonumber(time[2])
local token
if KEYS[3] then
  if redis.call('EXISTS', KEYS[3]) == 0 then
    -- A lost counter restarts from the clock in microseconds: tokens keep growing.
    redis.call('SET', KEYS[3], time[1] .. string.format('%06d', time[2]))
  end
  token = redis.call('INCR', KEYS[3])
else
  token = math.max((tonumber(seen[1]) or 0) + 1, clock_us)
end
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local lease_until = now + tonumber(ARGV[3])
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'status', 'in_progress', 'token', string.format('%d', token),
  'rev', '1', 'started_at', string.format('%d', now),
  'lease_until', string.format('%d', lease_until), unpack(ARGV, 4))
return token
