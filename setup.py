from setuptools import find_packages, setup

setup(
    name="trime",
    version="0.1.0",
    description="TRIME (Training LMs with Memory Augmentation, EMNLP 2022) as a fairseq plugin",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.8",
    packages=find_packages(include=["trime", "trime.*", "trime_fairseq"]),  # trime_fairseq: the --user-dir
    install_requires=[
        "torch",
        "numpy",
        "faiss-cpu",
        "sacrebleu",
        "scipy",
        "bm25s",
        "tqdm",
        "sacremoses",   # Moses tokenisation for translation data (trime-prepare-translation)
        "subword-nmt",  # joint BPE
        # fairseq's --tensorboard-logdir; without it every fairseq command starts with the line
        # "Please install tensorboardX", printed while fairseq is imported, before any plugin
        "tensorboardX",
        'fairseq==0.12.2; python_version < "3.11"',
        'fairseq-fixed==0.12.3.1; python_version >= "3.11"',
    ],
    extras_require={
        "gpu": ["faiss-gpu"],
        # triton: the fused memory kernel's tests run it in Triton's CPU interpreter
        "test": ["pytest", "pytest-xdist", 'triton; platform_system == "Linux" and platform_machine == "x86_64"'],
        "plots": ["matplotlib"],
        # trime.hf: TRIME for transformers causal LMs (accelerate: what transformers.Trainer needs;
        # tokenizers: the real run's locally trained tokenizer)
        "hf": ["transformers>=4.36", "tokenizers", "accelerate>=1.1.0"],
    },
    entry_points={
        "console_scripts": [
            "trime-user-dir = trime.cli.options:print_user_dir",
            "trime-options = trime.cli.options:print_options",
            "trime-toy-corpus = trime.cli.toy_corpus:main",
            "trime-memory-curve = trime.cli.memory_curve:main",
            "trime-build-index = trime.cli.build_index:main",
            "trime-import-dstore = trime.cli.import_dstore:main",
            "trime-merge-dstore = trime.cli.merge_dstore:main",
            "trime-mt-datastore = trime.cli.mt_datastore:main",
            "trime-prepare-translation = trime.cli.prepare_translation:main",
            "trime-prepare-iwslt14 = trime.cli.prepare_iwslt14:main",
            "trime-prepare-wikitext103 = trime.cli.prepare_wikitext103:main",
            "trime-prepare-enwik8 = trime.cli.prepare_enwik8:main",
            "trime-prepare-books = trime.cli.prepare_books:main",
            "trime-bm25-batches = trime.cli.bm25_batches:main",
            "trime-tune = trime.cli.tune:main",
            "trime-mt-tune = trime.cli.mt_tune:main",
            "trime-repro = trime.cli.repro:main",
            "trime-keep-model = trime.cli.keep_model:main",
            "trime-hf-eval = trime.cli.hf_eval:main",
            "trime-hf-train = trime.cli.hf_train:main",
        ]
    },
)
