-- Reads the journal KEYS[2] of the record KEYS[1] if it still carries token
-- ARGV[1]: the frames after entry ARGV[2], about ARGV[3] bytes of them (at
-- least one). Returns false when the record is gone, else
-- {last entry read, more after it (0/1), stdout and stderr lengths of a
-- record written before journals, frames...}.
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return false end
local from = tonumber(ARGV[2])
local entries = redis.call('XRANGE', KEYS[2], string.format('%d-0', from + 1), '+', 'COUNT', 65)
local reply = {from, 0, redis.call('HSTRLEN', KEYS[1], 'stdout'),
  redis.call('HSTRLEN', KEYS[1], 'stderr')}
local bytes = 0
for i, entry in ipairs(entries) do
  if i > 64 or bytes >= tonumber(ARGV[3]) then
    reply[2] = 1
    break
  end
  reply[1] = tonumber(string.match(entry[1], '^(%d+)'))
  if entry[2][1] == 'f' then
    table.insert(reply, entry[2][2])
    bytes = bytes + #entry[2][2]
  end
end
return reply
