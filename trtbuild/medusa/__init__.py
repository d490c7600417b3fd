"""Medusa: head files, trees (`medusa_choices`), training and tuning of heads.

Conversion of heads lives in trtbuild/convert (next to the base model's name maps), tree
decoding in trtbuild/runtime/medusa.py.
"""
