"""Everything that decides: syslog messages in, ban decisions out.

Pure logic: no I/O, no asyncio, no logging; time is an argument (`now`, monotonic seconds).
"""
