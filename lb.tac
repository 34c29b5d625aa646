"""
Deployment file: C{twistd -ny lb.tac}.  Reads C{lb.yaml} (or the file named
by C{LBTWIST_CONFIG}) from the working directory.
"""

import os

from twisted.application.service import Application

from lbtwist.tap import Options, makeService

options = Options()
options.parseOptions(["--config", os.environ.get("LBTWIST_CONFIG", "lb.yaml")])
application = Application("lbtwist")
makeService(options).setServiceParent(application)
