from setuptools import find_packages, setup

setup(
    name="wgan_dist",
    version="0.1.0",
    description="WGAN-GP image generators from a folder of images to a multi-node run",
    packages=find_packages(include=["wgan_dist", "wgan_dist.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "torchvision",
        "accelerate>=1.0",
        "webdataset>=0.2.90",
        "tensorboard",
        "braceexpand",
        "numpy",
        "scipy",
        "torchmetrics>=1.0",
        "pillow",
        "pyyaml",
        "tqdm",
    ],
    extras_require={
        # OpenCV up to 4.10 ships the Haar cascades the photo judges use (5.x dropped them).
        "test": ["pytest", "deepspeed", "opencv-python-headless<4.11"],
        "photos": ["opencv-python-headless<4.11"],
        "fid": ["torch-fidelity"],
        "deepspeed": ["deepspeed"],
    },
    include_package_data=True,
)
