"""
Text features shared by quality scoring and decontamination: texts -> a matrix whose rows can be
compared (cosine) or fed to a classifier.
"""
from nanophi.records import DataError

HASHING = "hashing"
MAX_CHARS = 4000  # characters of a document featurised and judged (FineWeb-Edu's classifier reads 512 tokens)


class Features:
    """texts -> feature matrix. 'hashing' (the offline default: no vocabulary to fit or download,
    word unigrams+bigrams as in DCLM's fastText filter) or a sentence-transformers model name or dir."""

    def __init__(self, spec=HASHING, max_chars=MAX_CHARS):
        self.spec, self.max_chars = spec, max_chars
        if spec == HASHING:
            from sklearn.feature_extraction.text import HashingVectorizer
            self.vec = HashingVectorizer(ngram_range=(1, 2), n_features=2 ** 18, alternate_sign=False, norm="l2")
        else:
            try:
                from sentence_transformers import SentenceTransformer
                self.vec = SentenceTransformer(spec, device="cpu")
            except Exception as e:
                raise DataError(f"features={spec!r}: cannot load this sentence-transformers model "
                                f"({type(e).__name__}: {str(e)[:200]}); offline use features='hashing'") from None

    def __call__(self, texts):
        texts = [t[:self.max_chars] for t in texts]
        if self.spec == HASHING:
            return self.vec.transform(texts)
        return self.vec.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False)
