"""The rows of ``zero123 eval-3d``'s table (``zero123.evaluation.eval3d``), in a module that imports nothing so that
the command line's parser can show them without importing torch."""

#: Result rows, in table order.
ROWS = ("model", "gt_views", "extrude", "sphere")
