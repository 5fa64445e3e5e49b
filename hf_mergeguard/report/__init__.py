"""The self-test report: its typed schema (``schema``), the one place shares and the attacker's best are computed
(``scoring``), and its plain-text table (``table``). ``selftest.json`` is a :class:`~.schema.SelfTestReport`."""
