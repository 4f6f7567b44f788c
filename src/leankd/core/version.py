"""leankd's version, in a module that imports nothing, so the report schema can stamp it without importing the
package (`import leankd` would pull the API in, and the API imports the report)."""
__version__ = "0.2.0"
