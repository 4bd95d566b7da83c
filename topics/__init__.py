"""The topic contract: topic names, event records, recommendations and dead letters.

Everything a producer or a downstream consumer needs to know lives here; nothing in this
package imports from features/, models/ or stream/.
"""
