"""Token ids and text length shared by the models and the data pipeline (BERT uncased + BLIP's two tokens).

``[PAD]``=0, ``[UNK]``=100, ``[CLS]``=101, ``[SEP]``=102, ``[MASK]``=103, and BLIP's ``[DEC]``=30522
(decoder bos) and ``[ENC]``=30523 (first token of the fused pass): vocabulary 30,524.
"""
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 100, 101, 102, 103
DEC_ID, ENC_ID = 30522, 30523
VOCAB_SIZE = 30524
MAX_TEXT_LEN = 73  # [CLS] + 71 WordPieces + [SEP], the reference's padded length
IGNORE_INDEX = -100  # label of positions that no loss reads
