"""The DICOM node (``mammolens listen``): receive studies from a PACS, predict, send the results back.

Application layer. ``NodeCfg`` (settings), ``Node`` (Storage SCP + predict and send threads), ``serve`` (run
until SIGTERM), ``read_status`` (the status a node writes in its spool). See ``docs/dicom_node.md``.
"""

from mammolens.node.config import Destination, NodeCfg, parse_destination
from mammolens.node.server import MAMMOGRAPHY_SOP_CLASSES, TRANSFER_SYNTAXES, Node, read_status, serve

__all__ = ["MAMMOGRAPHY_SOP_CLASSES", "TRANSFER_SYNTAXES", "Destination", "Node", "NodeCfg", "parse_destination",
           "read_status", "serve"]
