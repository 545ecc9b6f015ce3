import math


def circle_area(radius):
    """Area of a circle of the given radius."""
    return 


def fibonacci(n):
    """The first n Fibonacci numbers."""
    numbers = [0, 1]
    while len(numbers) < n:
        numbers.append(numbers[-1] + numbers[-2])
    return numbers[:n]
