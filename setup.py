from setuptools import find_packages, setup

setup(
    name="searnn-fairseq",
    version="0.1.0",
    description="SEARNN (Leblond et al., ICLR 2018) training for fairseq sequence models",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["searnn_fairseq", "searnn_fairseq.*"]),
    python_requires=">=3.9",
    # torch is pinned: an unpinned torch pulls a multi-GB CUDA build.
    # fairseq-fixed keeps the `fairseq` import name and imports on Python 3.11,
    # where PyPI's fairseq 0.12.2 does not.
    install_requires=[
        "torch==2.13.0",
        "fairseq-fixed==0.12.3.1",
        "numpy",
        "sacrebleu>=2.0",
        "sentencepiece",
    ],
    extras_require={"test": ["pytest", "hypothesis", "matplotlib", "seqeval==1.2.2"]},
    entry_points={
        "console_scripts": ["searnn-user-dir = searnn_fairseq.cli:print_user_dir"],
    },
)
