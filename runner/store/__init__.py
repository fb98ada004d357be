"""Every byte the runner sends to Redis goes through this package; nothing outside it talks to Redis.

connection.py   the client (one pool, bounded calls), ``redis_errors`` at the boundary
embedded.py     the private redis-server used when no REDIS_URL is set
keys.py         every Redis name and TTL
scripts.py      every Lua script, with its named KEYS and ARGV
replies.py      replies parsed into the runner's types, one way for every reader
state.py        the cycle's begin and record steps, the breaker's compare-and-set, operator commands
locks.py        symbol locks, fencing tokens, the heartbeat
publish.py      the fenced, idempotent publish (and the dry run's publisher that writes nothing)
ratelimit.py    the request rate shared by every run and shard
cycle_store.py  what one cycle reads and writes, as one object (and its dry-run twin)
status.py       everything ``runner status`` reads, in one pipelined round trip
streams.py      following the signal stream (``runner watch``)
"""
