"""Prefix states (op/prefix.py) kept beside a transformers cache: one per attention layer, or per
layer and row of a padded batch.

They are found by the cache object and held under a weak reference to it, so they go when the
cache goes. Each attention call takes its layer's states out (`take_layer`) and puts back only those
it extended, so a call that does not extend them (a decode step, a dense fallback, a new prompt)
drops them: a cache that was reset, cropped or reordered in between is never read through a state
built before. A state whose length does not match the next chunk's prefix is rebuilt by that chunk.
The attention function does not receive the cache, so `apply` adds a forward pre-hook to each
attention module that notes the cache it is called with.
"""
import threading
import weakref


class PrefixStates:
    def __init__(self):
        self._by_cache = weakref.WeakKeyDictionary()  # cache -> {(layer, row): PrefixState}
        self._lock = threading.Lock()

    def get(self, cache, key):
        with self._lock:
            return self._by_cache.get(cache, {}).get(key)

    def put(self, cache, key, state) -> None:
        with self._lock:
            self._by_cache.setdefault(cache, {})[key] = state

    def take_layer(self, cache, layer) -> dict:
        """Remove and return this layer's states ({(layer, row...): state}) kept beside this cache."""
        with self._lock:
            states = self._by_cache.get(cache) or {}
            return {key: states.pop(key) for key in [key for key in states if key[0] == layer]}

    def held(self) -> int:
        """States held, over every live cache."""
        with self._lock:
            return sum(len(states) for states in self._by_cache.values())


def remember_cache(module, args, kwargs):
    """Forward pre-hook of an attention module: note (weakly) the cache this call extends, if any."""
    cache = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers >= 5.2x names it `cache`
    module.pbs_cache = weakref.ref(cache) if cache is not None else None


def cache_of(module):
    """The cache the module's current call extends, or None."""
    ref = getattr(module, "pbs_cache", None)
    return ref() if ref is not None else None
