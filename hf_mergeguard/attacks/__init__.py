"""What a free-rider does: merges (mergekit) and adaptive attacks on a defense."""
