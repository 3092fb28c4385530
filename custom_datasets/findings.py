"""The NIH ChestX-ray14 label space, in one fixed order used everywhere in keras-cxr.

`FINDINGS` are the 14 findings in the order of Wang et al. (CVPR 2017). A label vector `y` in the
models is the 14-dim multi-hot over `FINDINGS`; "No Finding" is the all-zero vector. The metadata
tables also carry a 15th column, `No Finding`, in `LABELS`.
"""

FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NO_FINDING = "No Finding"
LABELS = FINDINGS + (NO_FINDING,)
NUM_FINDINGS = len(FINDINGS)

# Spellings seen in the wild -> canonical name (case-insensitive lookup, see `canonical_finding`).
_ALIASES = {name.lower(): name for name in LABELS}
_ALIASES.update(
    {
        "pleural thickening": "Pleural_Thickening",
        "pleural-thickening": "Pleural_Thickening",
        "no_finding": NO_FINDING,
        "nofinding": NO_FINDING,
    }
)


def canonical_finding(name: str) -> str:
    """Return the canonical spelling of a finding name, or raise `UserError` listing valid ones."""
    key = str(name).strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    from keras_cxr.errors import UserError

    raise UserError(f"unknown finding {name!r}; valid: {', '.join(LABELS)}")


def multi_hot(names, include_no_finding: bool = False):
    """Multi-hot float32 vector over FINDINGS (or LABELS) for an iterable of finding names."""
    import numpy as np

    order = LABELS if include_no_finding else FINDINGS
    vec = np.zeros(len(order), dtype="float32")
    for n in names:
        c = canonical_finding(n)
        if c == NO_FINDING and not include_no_finding:
            continue
        vec[order.index(c)] = 1.0
    return vec


def check_finding_set(names, flag: str = "--finding") -> list:
    """Canonical names of one label set given on the command line: known findings, no repeats, and
    'No Finding' only on its own (it means "none of the findings"; with a finding it contradicts it)."""
    from keras_cxr.errors import UserError

    canon = [canonical_finding(n) for n in names]
    if NO_FINDING in canon and len(canon) > 1:
        raise UserError(f"{flag}: 'No Finding' means no finding at all and cannot be combined with "
                        f"{', '.join(c for c in canon if c != NO_FINDING)}; give it alone or leave it out")
    dup = sorted({c for c in canon if canon.count(c) > 1})
    if dup:
        raise UserError(f"{flag}: {dup[0]!r} is given twice")
    return canon
