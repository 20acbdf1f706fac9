"""The torch side of the in-house methods: their nn.Modules, where they attach in a model (sites), and
the attention prefix. A method's declaration (bench/methods/) imports none of this at module level; its
`build` imports what it needs when a cell applies it. So planning a grid, reporting, listing and
checking a suite never import torch (tests/test_imports.py), which alone takes seconds.
"""
