from setuptools import find_packages, setup

setup(
    name="lbtwist",
    version="0.1.0",
    description="An event-driven TCP and HTTP load balancer on Twisted.",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    # Every package under lbtwist/ (a list by hand once left one out).
    packages=[*find_packages(include=["lbtwist", "lbtwist.*"]), "twisted.plugins"],
    package_dir={"": "."},
    package_data={"twisted": ["plugins/lbtwist_lb.py"], "lbtwist": ["static/*", "py.typed"]},
    python_requires=">=3.10",
    install_requires=[
        "twisted[tls]>=23.10",
        "txaio>=23.1",
        "pyyaml>=6",
        "attrs>=23.1",
        "httptools>=0.6",
        "prometheus_client>=0.19",
        "bcrypt>=4.1",
        "h2>=4.1",
    ],
    entry_points={"console_scripts": ["lbtwist = lbtwist.ctl:main"]},
    extras_require={
        "test": ["ruff", "mypy", "mypy-zope", "types-PyYAML", "hypothesis", "grpcio"],
    },
)
