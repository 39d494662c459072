"""PLAINFORMAT coding rows (the answer is only the code, airoboros style) and the held-out code suite.

Every Python answer comes with unit tests that tests/test_data_samples.py runs, so the bundled training data
teaches only programs that work (the base case of a recursion included). The held-out items ask for other
functions than the training rows (a test checks the names and the task wording are disjoint); their tests are
what `chatsmith eval` runs against the model's answer.
"""

from __future__ import annotations

# (instruction without " PLAINFORMAT", code, tests)
TRAIN_PYTHON: list[tuple[str, str, str]] = [
    ("Write a Python function total(numbers) that returns the sum of a list of numbers.",
     "def total(numbers):\n    result = 0\n    for n in numbers:\n        result += n\n    return result",
     "assert total([1, 2, 3]) == 6\nassert total([]) == 0"),
    ("Write a Python function reverse(text) that reverses a string.", "def reverse(text):\n    return text[::-1]",
     "assert reverse('abc') == 'cba'\nassert reverse('') == ''"),
    ("Write a Python function is_prime(n) that checks whether a number is prime.",
     "def is_prime(n):\n    if n < 2:\n        return False\n    i = 2\n    while i * i <= n:\n        if n % i == 0:\n"
     "            return False\n        i += 1\n    return True",
     "assert is_prime(2) and is_prime(13)\nassert not is_prime(1) and not is_prime(15)"),
    ("Write a Python function count_vowels(text) that counts the vowels in a string.",
     "def count_vowels(text):\n    return sum(1 for ch in text.lower() if ch in \"aeiou\")",
     "assert count_vowels('Hello World') == 3\nassert count_vowels('xyz') == 0"),
    ("Write a Python function fibonacci(n) that returns the n-th Fibonacci number.",
     "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
     "assert fibonacci(0) == 0\nassert fibonacci(1) == 1\nassert fibonacci(10) == 55"),
    ("Write a Python function unique(items) that removes duplicates from a list while keeping the order.",
     "def unique(items):\n    seen = set()\n    out = []\n    for item in items:\n        if item not in seen:\n"
     "            seen.add(item)\n            out.append(item)\n    return out",
     "assert unique([3, 1, 3, 2, 1]) == [3, 1, 2]\nassert unique([]) == []"),
    ("Write a Python function celsius_to_fahrenheit(celsius) that converts Celsius to Fahrenheit.",
     "def celsius_to_fahrenheit(celsius):\n    return celsius * 9 / 5 + 32",
     "assert celsius_to_fahrenheit(100) == 212\nassert celsius_to_fahrenheit(0) == 32"),
    ("Write a Python function factorial(n) that returns n factorial, using recursion.",
     "def factorial(n):\n    if n <= 1:\n        return 1\n    return n * factorial(n - 1)",
     "assert factorial(0) == 1\nassert factorial(1) == 1\nassert factorial(5) == 120"),
    ("Write a Python function gcd(a, b) that returns the greatest common divisor of two integers.",
     "def gcd(a, b):\n    while b:\n        a, b = b, a % b\n    return a",
     "assert gcd(12, 18) == 6\nassert gcd(7, 5) == 1\nassert gcd(9, 0) == 9"),
    ("Write a Python function is_even(n) that returns True when n is even.",
     "def is_even(n):\n    return n % 2 == 0", "assert is_even(4)\nassert not is_even(7)\nassert is_even(0)"),
    ("Write a Python function largest(numbers) that returns the largest number in a non-empty list without "
     "using max().",
     "def largest(numbers):\n    best = numbers[0]\n    for n in numbers[1:]:\n        if n > best:\n"
     "            best = n\n    return best",
     "assert largest([3, 9, 2]) == 9\nassert largest([-5, -2]) == -2"),
    ("Write a Python function average(numbers) that returns the mean of a non-empty list of numbers.",
     "def average(numbers):\n    return sum(numbers) / len(numbers)",
     "assert average([1, 2, 3, 4]) == 2.5\nassert average([7]) == 7"),
    ("Write a Python function count_words(text) that returns the number of words in a string.",
     "def count_words(text):\n    return len(text.split())",
     "assert count_words('the quick brown fox') == 4\nassert count_words('') == 0"),
    ("Write a Python function flatten(lists) that turns a list of lists into one list.",
     "def flatten(lists):\n    out = []\n    for inner in lists:\n        out.extend(inner)\n    return out",
     "assert flatten([[1, 2], [3], []]) == [1, 2, 3]\nassert flatten([]) == []"),
    ("Write a Python function char_frequency(text) that returns a dictionary counting each character.",
     "def char_frequency(text):\n    counts = {}\n    for ch in text:\n        counts[ch] = counts.get(ch, 0) + 1\n"
     "    return counts",
     "assert char_frequency('abca') == {'a': 2, 'b': 1, 'c': 1}\nassert char_frequency('') == {}"),
    ("Write a Python function squares(numbers) that returns a list of the squares of the numbers.",
     "def squares(numbers):\n    return [n * n for n in numbers]",
     "assert squares([1, 2, 3]) == [1, 4, 9]\nassert squares([]) == []"),
    ("Write a Python function only_even(numbers) that returns the even numbers of a list.",
     "def only_even(numbers):\n    return [n for n in numbers if n % 2 == 0]",
     "assert only_even([1, 2, 3, 4]) == [2, 4]\nassert only_even([1, 3]) == []"),
    ("Write a Python function power(base, exponent) that computes base to a non-negative integer exponent "
     "with a loop.",
     "def power(base, exponent):\n    result = 1\n    for _ in range(exponent):\n        result *= base\n"
     "    return result",
     "assert power(2, 10) == 1024\nassert power(5, 0) == 1"),
    ("Write a Python function sum_digits(n) that returns the sum of the digits of a non-negative integer.",
     "def sum_digits(n):\n    return sum(int(d) for d in str(n))",
     "assert sum_digits(1234) == 10\nassert sum_digits(0) == 0"),
    ("Write a Python function capitalize_words(text) that capitalizes the first letter of every word.",
     "def capitalize_words(text):\n    return \" \".join(word.capitalize() for word in text.split())",
     "assert capitalize_words('hello big world') == 'Hello Big World'"),
    ("Write a Python function remove_spaces(text) that removes all spaces from a string.",
     "def remove_spaces(text):\n    return text.replace(\" \", \"\")",
     "assert remove_spaces(' a b  c ') == 'abc'"),
    ("Write a Python function clamp(x, low, high) that limits x to the range from low to high.",
     "def clamp(x, low, high):\n    if x < low:\n        return low\n    if x > high:\n        return high\n"
     "    return x",
     "assert clamp(5, 0, 10) == 5\nassert clamp(-3, 0, 10) == 0\nassert clamp(42, 0, 10) == 10"),
    ("Write a Python function count_item(items, target) that counts how often target appears in a list.",
     "def count_item(items, target):\n    count = 0\n    for item in items:\n        if item == target:\n"
     "            count += 1\n    return count",
     "assert count_item([1, 2, 1, 1], 1) == 3\nassert count_item([], 1) == 0"),
    ("Write a Python function is_sorted(numbers) that checks whether a list is sorted in ascending order.",
     "def is_sorted(numbers):\n    for i in range(1, len(numbers)):\n        if numbers[i - 1] > numbers[i]:\n"
     "            return False\n    return True",
     "assert is_sorted([1, 2, 2, 5])\nassert not is_sorted([3, 1])\nassert is_sorted([])"),
    ("Write a Python function running_total(numbers) that returns the cumulative sums of a list.",
     "def running_total(numbers):\n    out = []\n    acc = 0\n    for n in numbers:\n        acc += n\n"
     "        out.append(acc)\n    return out",
     "assert running_total([1, 2, 3]) == [1, 3, 6]\nassert running_total([]) == []"),
    ("Write a Python function chunks(items, size) that splits a list into pieces of the given size.",
     "def chunks(items, size):\n    return [items[i:i + size] for i in range(0, len(items), size)]",
     "assert chunks([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]\nassert chunks([], 3) == []"),
    ("Write a Python function fizzbuzz(n) that returns the FizzBuzz strings for the numbers 1 to n.",
     "def fizzbuzz(n):\n    out = []\n    for i in range(1, n + 1):\n        if i % 15 == 0:\n"
     "            out.append(\"FizzBuzz\")\n        elif i % 3 == 0:\n            out.append(\"Fizz\")\n"
     "        elif i % 5 == 0:\n            out.append(\"Buzz\")\n"
     "        else:\n            out.append(str(i))\n    return out",
     "assert fizzbuzz(5) == ['1', '2', 'Fizz', '4', 'Buzz']\nassert fizzbuzz(15)[-1] == 'FizzBuzz'"),
    ("Write a Python function smallest(numbers) that returns the smallest number in a non-empty list.",
     "def smallest(numbers):\n    return min(numbers)", "assert smallest([4, -1, 7]) == -1\nassert smallest([2]) == 2"),
    ("Write a Python function is_anagram(a, b) that checks whether two words are anagrams.",
     "def is_anagram(a, b):\n    return sorted(a.lower()) == sorted(b.lower())",
     "assert is_anagram('listen', 'Silent')\nassert not is_anagram('cat', 'dog')"),
    ("Write a Python function absolute(n) that returns the absolute value of a number without abs().",
     "def absolute(n):\n    if n < 0:\n        return -n\n    return n",
     "assert absolute(-4) == 4\nassert absolute(3) == 3"),
    ("Write a Python function countdown(n) that returns the list of numbers from n down to 1.",
     "def countdown(n):\n    return list(range(n, 0, -1))",
     "assert countdown(3) == [3, 2, 1]\nassert countdown(0) == []"),
    ("Write a Python function word_lengths(text) that returns the length of each word in a string.",
     "def word_lengths(text):\n    return [len(word) for word in text.split()]",
     "assert word_lengths('a bb ccc') == [1, 2, 3]\nassert word_lengths('') == []"),
    ("Write a Python function sum_of_squares(numbers) that returns the sum of the squares of a list of numbers.",
     "def sum_of_squares(numbers):\n    result = 0\n    for n in numbers:\n        result += n * n\n    return result",
     "assert sum_of_squares([1, 2, 3]) == 14\nassert sum_of_squares([]) == 0"),
    ("Write a Python function remove_vowels(text) that returns the string without its vowels.",
     "def remove_vowels(text):\n    return \"\".join(ch for ch in text if ch.lower() not in \"aeiou\")",
     "assert remove_vowels('Education') == 'dctn'\nassert remove_vowels('') == ''"),
    ("Write a Python function count_spaces(text) that returns how many space characters a string has.",
     "def count_spaces(text):\n    count = 0\n    for ch in text:\n        if ch == \" \":\n            count += 1\n"
     "    return count",
     "assert count_spaces('a b c') == 2\nassert count_spaces('abc') == 0"),
    ("Write a Python function count_long_words(text, n) that counts the words of a sentence that have more than "
     "n letters.",
     "def count_long_words(text, n):\n    return sum(1 for word in text.split() if len(word) > n)",
     "assert count_long_words('the quick brown fox', 3) == 2\nassert count_long_words('', 1) == 0"),
    ("Write a Python function max_difference(numbers) that returns the difference between the largest and the "
     "smallest number of a non-empty list.",
     "def max_difference(numbers):\n    return max(numbers) - min(numbers)",
     "assert max_difference([3, 9, 1]) == 8\nassert max_difference([5]) == 0"),
    ("Write a Python function rectangle_perimeter(width, height) that returns the perimeter of a rectangle.",
     "def rectangle_perimeter(width, height):\n    return 2 * (width + height)",
     "assert rectangle_perimeter(3, 4) == 14\nassert rectangle_perimeter(0, 0) == 0"),
    ("Write a Python function circle_area(radius) that computes the space a circle of that radius covers.",
     "import math\n\n\ndef circle_area(radius):\n    return math.pi * radius * radius",
     "assert abs(circle_area(1) - 3.141592653589793) < 1e-9\nassert circle_area(0) == 0"),
    ("Write a Python function hours_to_minutes(hours) that converts hours to minutes.",
     "def hours_to_minutes(hours):\n    return hours * 60",
     "assert hours_to_minutes(2) == 120\nassert hours_to_minutes(0.5) == 30"),
    ("Write a Python function pounds_to_kg(pounds) that converts pounds to kilograms (1 pound = 0.453592 kg).",
     "def pounds_to_kg(pounds):\n    return pounds * 0.453592",
     "assert abs(pounds_to_kg(10) - 4.53592) < 1e-9\nassert pounds_to_kg(0) == 0"),
    ("Write a Python function is_palindrome(text) that checks whether a word reads the same backwards, ignoring "
     "case.",
     "def is_palindrome(text):\n    low = text.lower()\n    return low == low[::-1]",
     "assert is_palindrome('Level')\nassert not is_palindrome('python')\nassert is_palindrome('')"),
    ("Write a Python function double_all(numbers) that returns a list with every number doubled.",
     "def double_all(numbers):\n    out = []\n    for n in numbers:\n        out.append(n * 2)\n    return out",
     "assert double_all([1, 2, 3]) == [2, 4, 6]\nassert double_all([]) == []"),
    ("Write a Python function above(numbers, limit) that returns the numbers of a list that are greater than "
     "limit.",
     "def above(numbers, limit):\n    return [n for n in numbers if n > limit]",
     "assert above([1, 5, 3, 8], 3) == [5, 8]\nassert above([], 0) == []"),
    ("Write a Python function sum_multiples_of_three(numbers) that adds up the numbers of a list that are "
     "divisible by 3.",
     "def sum_multiples_of_three(numbers):\n    total = 0\n    for n in numbers:\n        if n % 3 == 0:\n"
     "            total += n\n    return total",
     "assert sum_multiples_of_three([1, 3, 6, 7]) == 9\nassert sum_multiples_of_three([]) == 0"),
    ("Write a Python function cube(n) that returns n to the power of three.",
     "def cube(n):\n    return n * n * n", "assert cube(3) == 27\nassert cube(-2) == -8"),
    ("Write a Python function reverse_words(text) that reverses the order of the words in a sentence.",
     "def reverse_words(text):\n    return \" \".join(reversed(text.split()))",
     "assert reverse_words('one two three') == 'three two one'\nassert reverse_words('') == ''"),
    ("Write a Python function count_char(text, ch) that counts how often the character ch appears in text.",
     "def count_char(text, ch):\n    count = 0\n    for c in text:\n        if c == ch:\n            count += 1\n"
     "    return count",
     "assert count_char('banana', 'a') == 3\nassert count_char('', 'a') == 0"),
    ("Write a Python function repeat_text(text, n) that returns the string repeated n times.",
     "def repeat_text(text, n):\n    return text * n", "assert repeat_text('ab', 3) == 'ababab'\n"
     "assert repeat_text('x', 0) == ''"),
    ("Write a Python function is_divisible(a, b) that returns True when a is divisible by b.",
     "def is_divisible(a, b):\n    return a % b == 0", "assert is_divisible(10, 5)\nassert not is_divisible(7, 2)"),
    ("Write a Python function min_of_three(a, b, c) that returns the smallest of three numbers without using "
     "min().",
     "def min_of_three(a, b, c):\n    best = a\n    if b < best:\n        best = b\n    if c < best:\n"
     "        best = c\n    return best",
     "assert min_of_three(3, 1, 2) == 1\nassert min_of_three(-1, 5, -7) == -7"),
    ("Write a Python function sign(n) that returns -1 for a negative number, 1 for a positive one and 0 for zero.",
     "def sign(n):\n    if n < 0:\n        return -1\n    if n > 0:\n        return 1\n    return 0",
     "assert sign(-5) == -1\nassert sign(8) == 1\nassert sign(0) == 0"),
    ("Write a Python function scale(numbers, factor) that multiplies every number of a list by factor.",
     "def scale(numbers, factor):\n    return [n * factor for n in numbers]",
     "assert scale([1, 2], 3) == [3, 6]\nassert scale([], 5) == []"),
    ("Write a Python function index_of(items, target) that returns the position of target in a list, or -1 when "
     "it is not there.",
     "def index_of(items, target):\n    for i, item in enumerate(items):\n        if item == target:\n"
     "            return i\n    return -1",
     "assert index_of(['a', 'b', 'c'], 'b') == 1\nassert index_of([], 'x') == -1"),
    ("Write a Python function seconds_to_hours(seconds) that converts seconds to hours.",
     "def seconds_to_hours(seconds):\n    return seconds / 3600",
     "assert seconds_to_hours(7200) == 2\nassert seconds_to_hours(1800) == 0.5"),
    ("Write a Python function average_length(words) that returns the average length of a non-empty list of words.",
     "def average_length(words):\n    return sum(len(word) for word in words) / len(words)",
     "assert average_length(['ab', 'abcd']) == 3\nassert average_length(['x']) == 1"),
    ("Write a Python function median(numbers) that returns the median of a non-empty list of numbers.",
     "def median(numbers):\n    ordered = sorted(numbers)\n    mid = len(ordered) // 2\n    if len(ordered) % 2 == 1:\n"
     "        return ordered[mid]\n    return (ordered[mid - 1] + ordered[mid]) / 2",
     "assert median([3, 1, 2]) == 2\nassert median([4, 1, 3, 2]) == 2.5"),
    ("Write a Python function to_binary(n) that returns the binary digits of a non-negative integer as a string.",
     "def to_binary(n):\n    return bin(n)[2:]", "assert to_binary(5) == '101'\nassert to_binary(0) == '0'"),
    ("Write a Python function count_lines(text) that returns the number of lines in a string.",
     "def count_lines(text):\n    return len(text.splitlines())",
     "assert count_lines('a\\nb\\nc') == 3\nassert count_lines('') == 0"),
    ("Write a Python function percent(part, whole) that returns what percentage part is of whole.",
     "def percent(part, whole):\n    return part / whole * 100",
     "assert percent(1, 4) == 25\nassert percent(3, 3) == 100"),
    ("Write a Python function second_largest(numbers) that returns the second largest distinct number of a list.",
     "def second_largest(numbers):\n    return sorted(set(numbers))[-2]",
     "assert second_largest([4, 9, 9, 2]) == 4\nassert second_largest([1, 2]) == 1"),
    ("Write a Python function join_with_commas(items) that joins a list of strings with a comma and a space.",
     "def join_with_commas(items):\n    return \", \".join(items)",
     "assert join_with_commas(['a', 'b']) == 'a, b'\nassert join_with_commas([]) == ''"),
    ("Write a Python function is_square(n) that checks whether a non-negative integer is a perfect square.",
     "def is_square(n):\n    root = int(n ** 0.5)\n    while root * root > n:\n        root -= 1\n"
     "    while (root + 1) * (root + 1) <= n:\n        root += 1\n    return root * root == n",
     "assert is_square(16) and is_square(0)\nassert not is_square(15)"),
    ("Write a Python function multiply_pairs(a, b) that multiplies two lists element by element.",
     "def multiply_pairs(a, b):\n    return [x * y for x, y in zip(a, b)]",
     "assert multiply_pairs([1, 2], [3, 4]) == [3, 8]\nassert multiply_pairs([], []) == []"),
    ("Write a Python function first_word(text) that returns the first word of a sentence, or an empty string.",
     "def first_word(text):\n    words = text.split()\n    if not words:\n        return \"\"\n    return words[0]",
     "assert first_word('hello there') == 'hello'\nassert first_word('') == ''"),
]

# (id, instruction without " PLAINFORMAT", entry point, reference answer, tests)
HELDOUT_PYTHON: list[tuple[str, str, str, str, str]] = [
    ("product", "Write a Python function product(numbers) that multiplies all the numbers in a list together and "
     "returns 1 for an empty list.",
     "product", "def product(numbers):\n    result = 1\n    for n in numbers:\n        result *= n\n    return result",
     "assert product([2, 3, 4]) == 24\nassert product([]) == 1\nassert product([5]) == 5"),
    ("lcm", "Write a Python function lcm(a, b) that returns the least common multiple of two positive integers.",
     "lcm", "def lcm(a, b):\n    x, y = a, b\n    while y:\n        x, y = y, x % y\n    return a * b // x",
     "assert lcm(4, 6) == 12\nassert lcm(5, 7) == 35\nassert lcm(3, 3) == 3"),
    ("count-upper", "Write a Python function count_upper(text) that returns how many uppercase letters a string has.",
     "count_upper", "def count_upper(text):\n    return sum(1 for ch in text if ch.isupper())",
     "assert count_upper('Hello World') == 2\nassert count_upper('abc') == 0"),
    ("leap-year", "Write a Python function is_leap_year(year) that returns True for a leap year in the Gregorian "
     "calendar.",
     "is_leap_year", "def is_leap_year(year):\n    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)",
     "assert is_leap_year(2024)\nassert not is_leap_year(2023)\nassert not is_leap_year(1900)\n"
     "assert is_leap_year(2000)"),
    ("triangle-area", "Write a Python function triangle_area(base, height) that returns the area of a triangle.",
     "triangle_area", "def triangle_area(base, height):\n    return base * height / 2",
     "assert triangle_area(4, 5) == 10\nassert triangle_area(3, 3) == 4.5"),
    ("count-positive", "Write a Python function count_positive(numbers) that returns how many numbers in a list "
     "are greater than zero.",
     "count_positive", "def count_positive(numbers):\n    return sum(1 for n in numbers if n > 0)",
     "assert count_positive([1, -2, 3, 0]) == 2\nassert count_positive([]) == 0"),
    ("longest-word", "Write a Python function longest_word(text) that returns the longest word in a sentence "
     "(the first one if several are equally long).",
     "longest_word", "def longest_word(text):\n    best = ''\n    for word in text.split():\n"
     "        if len(word) > len(best):\n            best = word\n    return best",
     "assert longest_word('a quick brown fox') == 'quick'\nassert longest_word('hi') == 'hi'"),
    ("range-sum", "Write a Python function range_sum(a, b) that returns the sum of all integers from a to b "
     "inclusive.",
     "range_sum", "def range_sum(a, b):\n    return sum(range(a, b + 1))",
     "assert range_sum(1, 4) == 10\nassert range_sum(3, 3) == 3\nassert range_sum(-2, 2) == 0"),
    ("km-to-miles", "Write a Python function km_to_miles(km) that converts kilometers to miles (1 km = 0.621371 "
     "miles).",
     "km_to_miles", "def km_to_miles(km):\n    return km * 0.621371",
     "assert abs(km_to_miles(10) - 6.21371) < 1e-9\nassert km_to_miles(0) == 0"),
    ("initials", "Write a Python function initials(name) that returns the uppercase initials of a full name, "
     "for example 'ada lovelace' gives 'AL'.",
     "initials", "def initials(name):\n    return \"\".join(part[0].upper() for part in name.split())",
     "assert initials('ada lovelace') == 'AL'\nassert initials('Grace Brewster Hopper') == 'GBH'"),
    ("sum-even", "Write a Python function sum_even(numbers) that adds up the even numbers in a list.",
     "sum_even", "def sum_even(numbers):\n    return sum(n for n in numbers if n % 2 == 0)",
     "assert sum_even([1, 2, 3, 4]) == 6\nassert sum_even([1, 3]) == 0"),
    ("digits-only", "Write a Python function digits_only(text) that returns a string of only the digit characters "
     "of text, in order.",
     "digits_only", "def digits_only(text):\n    return \"\".join(ch for ch in text if ch.isdigit())",
     "assert digits_only('a1b22c') == '122'\nassert digits_only('none') == ''"),
]


def heldout_code_items() -> list[dict]:
    return [{"id": f"code-heldout-{i:02d}-{name}", "category": "code", "lang": "en",
             "prompt": f"{prompt} PLAINFORMAT", "entry_point": entry, "reference": ref, "tests": tests + "\n"}
            for i, (name, prompt, entry, ref, tests) in enumerate(HELDOUT_PYTHON, 1)]
