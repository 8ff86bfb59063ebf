"""The mock payment provider: one core (``core``) and protocol faces (``faces``), assembled by ``app``.

Layout (as moto lays out a mock of a real service): ``core.py`` is the backend — state, money and the
scenario's conditions, no wire format; each module of ``faces/`` parses one PSP's protocol, checks and
makes its signatures and formats its answers and notifications; ``keys.py`` keeps each face's keys in
the data directory; ``app.py`` builds the HTTP app from the core and the faces a run asks for.
"""
