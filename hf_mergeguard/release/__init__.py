"""Release: the release folder (weights, card, ``selftest.json``, config, log) and the owner's key, written both or
neither (``folder``), and the push to the Hub, only when every gate passed (``push``)."""
