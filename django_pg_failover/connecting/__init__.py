"""Opening a connection: one attempt, the race of several, the process's search, the memory.

- :mod:`.roles`: a server's role, read once, and libpq's rule for
  ``target_session_attrs``;
- :mod:`.verdicts`: what a failed attempt says about its host;
- :mod:`.memory`: what the process last learned about each host;
- :mod:`.attempt`: one host: connect, learn the role, the verdict;
- :mod:`.race`: several hosts at once, the first that suits wins;
- :mod:`.search`: one search per process while connections wait;
- :mod:`.connector`: the loop until a deadline, and the healthy path.
"""
