"""Independent, obviously-correct Python definitions the tests compare against."""


def levenshtein(a, b):
    """Unit-cost edit distance, the textbook O(len(a) * len(b)) dynamic programme."""
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
        prev = cur
    return prev[len(b)]


def hamming(a, b):
    """Mismatched positions, every position past the shorter sequence counting as one."""
    return sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b))
