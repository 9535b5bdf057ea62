"""The extractors' names, importable without torch (the configuration and the CLI's help read them).

``PRIMARY`` is the extractor whose space holds faces' identities, whose face is whose, and target
classes (dlib's ResNet). ``CLOAK`` is every extractor a cloak may be optimised against: the analyser
loads them all, and each preset names those it uses (core/cloak/presets.py).
"""

PRIMARY = "dlib_resnet"
CLOAK = (PRIMARY, "sface", "omz_reid", "facenet", "arcface_mbf")
