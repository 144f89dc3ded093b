"""The optional compiled parts of muse-stream, in C: the scorer's batch scanner and decision writer
(muse_stream/scoring/_native.c), reason codes' TreeSHAP tables (_treeshap.c) and the boosters' compiled trees
(_forest.c). Everything else is in pyproject.toml.

optional=True: where no C compiler works, the build says so and installs the package without it, and the
scorer runs its pure-Python path (muse_stream/scoring/native.py says which path is active)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "muse_stream.scoring._native",
            sources=["muse_stream/scoring/_native.c"],
            optional=True,
        ),
        # Reason codes' exact TreeSHAP from leaf tables (scoring/treeshap.py); without it, XGBoost's pred_contribs.
        Extension(
            "muse_stream.scoring._treeshap",
            sources=["muse_stream/scoring/_treeshap.c"],
            optional=True,
        ),
        # The boosters' predictions from compiled trees (scoring/forest.py); without it, XGBoost's inplace_predict.
        Extension(
            "muse_stream.scoring._forest",
            sources=["muse_stream/scoring/_forest.c"],
            optional=True,
        ),
    ]
)
