"""Model compression: candidates made by one method each (or a chain), measured by one harness, chosen by a gate.

Every method takes a trained Classifier (+ data where it needs some) and returns a Candidate; the gate picks the best
candidate whose accuracy drop stays under the threshold. Nothing here imports KFP.
"""

from kubeforge.compression.candidate import Candidate, CompressionError

__all__ = ["Candidate", "CompressionError"]
