"""Self-test: do to a model what a free-rider would do, and measure what survives.

* ``config``      :class:`SelfTestConfig`, the options of every self-test (``check``, ``protect``, ``attack``)
* ``freeriders``  the models merged with the defender (given, or a synthetic one), and their tasks
* ``matrix``      every merge method x coefficient x free-rider, scored with lm-eval; the analysis and the gates
* ``adaptive``    the adaptive attacks (:mod:`hf_mergeguard.attacks`) after the merges, and the adaptive gate
* ``check``       :func:`check_model`, the pre-upload check on a model as it is
"""
