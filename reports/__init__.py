"""Charts and a self-contained HTML report drawn from results JSON (never from the model).

``documents`` reads and checks results and sweep documents; ``charts`` draws one figure per chart;
``render`` saves them (PNG + SVG) and writes ``index.html`` through ``html`` and ``summary``; ``cli`` is
the ``report`` command and :func:`reports.cli.render_report` the entry point for ``--report``.
"""
