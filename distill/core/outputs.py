"""What the channels of a segmentation network's output mean.

Teachers, students and packages all name their output with one of these: BraTS region models
emit overlapping nested regions (WT ⊇ TC ⊇ ET), one sigmoid each, never a softmax across them.
"""

SIGMOID = "sigmoid"  # overlapping regions (WT, TC, ET), one sigmoid per channel
SOFTMAX = "softmax"  # mutually exclusive labels, softmax across channels
OUTPUT_KINDS = (SIGMOID, SOFTMAX)
