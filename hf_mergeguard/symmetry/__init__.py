"""The exact symmetries of Llama-family blocks (``transforms``) and neuron matching (``matching``): the shared math of
the function-preserving defenses (PaRaMS, MergeLock, MergeBarrier), the owner's ``unprotect`` and the re-align
attack."""
