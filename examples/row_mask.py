"""A connectivity of your own: each unit sees the inputs in its centre's row and column (on every
channel), nearest first. Register it, then use "row" as an arch anywhere:

    python sparse_dqn.py --masks examples/row_mask.py train --arch row --frames 20000
"""
import sparse_dqn as sd


@sd.register_mask("row")
def row_mask(cfg: sd.Config, seed: int):
    rc = sd.input_coords(cfg.env)[:, 1:]
    centre = rc[sd.unit_centres(cfg)]
    in_line = (rc[None, :, 0] == centre[:, None, 0]) | (rc[None, :, 1] == centre[:, None, 1])
    distance = (rc[None] - centre[:, None]).abs().sum(-1) + 1_000 * ~in_line
    return distance.argsort(dim=1, stable=True)[:, : cfg.k]
