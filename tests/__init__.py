"""
Tests for lbtwist.  The sans-IO core logs through txaio, which must be told
which framework to use before any logger is made.
"""

import txaio

txaio.use_twisted()
