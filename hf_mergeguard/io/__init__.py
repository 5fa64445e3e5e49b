"""Pull: every read and write of model weights, and the checks on inputs before any work.

* ``safetensors_format`` dtypes, specs, header parsing, plain reads of one tensor (no memory map)
* ``read_ahead``         iterate in a background thread (reading, arithmetic and writing overlap)
* ``checkpoint``         :class:`Checkpoint`: a model folder or Hub repo, tensors streamed one at a time
* ``sources``            :class:`TensorSource`: a checkpoint on disk or tensors in memory, one interface
* ``hf_models``          ``transformers`` models built on tensors in memory, and saved as folders
* ``writer``             sharded safetensors streamed into an atomic folder, finite-checked and stamped
* ``atomic``             atomic files and folders (the only way outputs are written)
* ``hub``                snapshot downloads and Hub errors translated into ours
* ``checks``             checkpoint vs its config, fine-tune vs base, NaN/Inf in the inputs
"""

from .atomic import atomic_file, atomic_output_dir, write_text_atomically
from .checkpoint import Checkpoint
from .checks import check_compatible, check_finite
from .hf_models import model_from_state_dict, model_state_dict, save_model
from .safetensors_format import TensorSpec, layout_of
from .sources import StateDictSource, TensorSource, materialize
from .writer import stamp_metadata, write_checkpoint

__all__ = [
    "Checkpoint",
    "StateDictSource",
    "TensorSource",
    "TensorSpec",
    "atomic_file",
    "atomic_output_dir",
    "check_compatible",
    "check_finite",
    "layout_of",
    "materialize",
    "model_from_state_dict",
    "model_state_dict",
    "save_model",
    "stamp_metadata",
    "write_checkpoint",
    "write_text_atomically",
]
