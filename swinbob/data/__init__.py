"""Data: datalists and transforms, loaders, input cases, `--task auto` (dataset.json), nnU-Net v2 raw
folders, synthetic phantoms, the MNI152 brain cohort and scanner shifts."""
