"""Acquisition-layout datasets (Cresson et al. 2022, §4): archive scanning, the patch R-tree and its layout
queries, geographically disjoint splits. The command is :mod:`training.build_dataset`."""
