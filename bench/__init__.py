"""Panda Chat's benchmark instrument (not part of the server): run `python3 bench/run.py`.

loadgen.py    worker processes that each run many chat clients over one asyncio loop
servers.py    a server under test: started on a free loopback port, watched, stopped by PID
scenarios.py  fanout, latency, connections, slowconsumer, churn
run.py        runs every scenario against every server, with repeats; prints one table
baseline_textbook.py, baseline_asyncio.py   the reference servers Panda Chat is compared with
"""
