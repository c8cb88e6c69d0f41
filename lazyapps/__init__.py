"""lazyapps: the lazy teacher of long-horizon gradient-based meta-learning.

Jamal, Wang, Gong, "A Lazy Approach to Long-Horizon Gradient-Based
Meta-Learning". The engine lives in :mod:`lazyapps.teacher` and
:mod:`lazyapps.functional`; data in :mod:`lazyapps.data`. Importing this
package stays cheap (no torch import) so that ``lazyapps --help`` is fast.
"""

__version__ = "0.1.0"
