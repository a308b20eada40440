-- The server's time and the record KEYS[1]'s fields ARGV, in one call
-- routed to the record's node: {seconds, microseconds, field values...}.
local time = redis.call('TIME')
local values = redis.call('HMGET', KEYS[1], unpack(ARGV))
table.insert(values, 1, time[2])
table.insert(values, 1, time[1])
return values
