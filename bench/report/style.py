"""How the report marks each method family and memory part, shared by the drawn figures
(bench/report/draw.py) and the HTML page's interactive plot (bench/report/interactive.py).

Okabe-Ito colours (colour-blind safe) with distinct marker shapes, so families stay apart in greyscale;
memory parts differ by hatch as well as grey level.
"""

FAMILY_STYLE = {"baseline": ("s", "#000000"), "additive": ("^", "#E69F00"), "partial": ("D", "#56B4E9"),
                "reparameterized": ("o", "#009E73"), "hybrid": ("P", "#CC79A7"), "unified": ("*", "#D55E00")}
OTHER_STYLE = ("X", "#999999")  # a family outside FAMILY_STYLE
PART_STYLE = {"Weights": ("#404040", ""), "Gradients": ("#808080", "//"), "Optimizer": ("#b0b0b0", "xx"),
              "Activations": ("#e0e0e0", "..")}
