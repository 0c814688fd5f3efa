"""ebc controller: the township emergency-broadcast gateway daemon."""
