"""Attacks: what a free-rider does. Merges with mergekit (``merges``: every method and the coefficients a free-rider
would sweep) and the adaptive attacks of a free-rider who knows the defense, one module each, registered in
:data:`~.base.ATTACKS` (``realign``, ``unmask``, ``recover``, ``graderase``)."""
